"""The stream's state: per-user histories (``store``) and the item vocabulary (``vocab``),
with the index structures behind them (``keyindex``, ``grouping``, ``slots``, ``recency``,
``memory``). Between validation and batch assembly in the flow; no neural networks here.
"""
