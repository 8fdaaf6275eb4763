"""Loading one published version to score with: strict config, bounded reads, verified files.

A version's files pass their manifest's sha256, but whoever could write the registry could also
re-sign a crafted manifest, so every file is parsed as untrusted input, and nothing is
allocated before its size is known to be bounded:

* ``config.json`` (at most ``MAX_CONFIG_BYTES``) is parsed into ``PublishedConfig``: strict
  types, no unknown keys, every size within bounds. The model is then built on torch's
  ``meta`` device (no memory) and its parameters must fit in ``model.pt``'s size: a config
  that describes a bigger model than the weights file holds is refused before the real
  model is allocated.
* ``vocab.npz`` (its archive and every member's decompressed size) is bounded by
  ``max_vocab_bytes`` before a member is read (``pipeline.state.vocab.unpack_arrays``), and
  its capacity must be the model's row count.
* ``model.pt`` loads with ``torch.load(weights_only=True)``: no pickle payload runs.
* A delta version (``Manifest.delta_of``) is loaded through its chain (``Registry.chain``:
  every link verified): the full version at its root gives the weights, each delta's
  ``item_rows.pt`` is written over the item table in chain order (``pipeline.stream.rowdelta``)
  and the newest delta's ``model.pt`` gives the other parameters. Every link's config must
  describe the same model as the version's own, and each delta file is bounded by the size of
  the model's parameters before it is read.

Every problem is a one-line ``RegistryError`` naming the version, the file and the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from connectors.registry.errors import RegistryError
from connectors.registry.manifest import (
    CONFIG_NAME,
    FileEntry,
    Manifest,
    summarize,
    version_dir_name,
)
from model.actions import DEFAULT_VALUE_BOUNDARIES
from model.base import SequentialEncoder
from model.dlrm import DLRM, DLRMConfig
from model.hstu import HSTU, RESEARCH_FORM, HSTUConfig
from model.sasrec import SASRec, SASRecConfig
from pipeline.state.vocab import ItemVocabulary, unpack_arrays
from pipeline.stream import rowdelta
from pipeline.stream.checkpoint import CheckpointError, state_from_bytes
from pipeline.stream.publishing import (
    DEFAULT_MAX_VOCAB_BYTES,
    MODEL_FILE,
    ROWS_FILE,
    VOCAB_FILE,
    PublishedModel,
)

MAX_CONFIG_BYTES = 1 << 20


class EncoderSettings(BaseModel):
    """The fields HSTU's and SASRec's configs share, bounded."""

    model_config = ConfigDict(extra="forbid", strict=True)

    num_rows: int = Field(ge=2, le=2**31 - 1)
    embedding_dim: int = Field(64, ge=1, le=1 << 16)
    num_layers: int = Field(2, ge=1, le=256)
    num_heads: int = Field(1, ge=1, le=1024)
    max_len: int = Field(200, ge=1, le=1 << 20)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    input_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    action_inputs: bool = False
    value_boundaries: list[float] = Field(
        default_factory=lambda: list(DEFAULT_VALUE_BOUNDARIES), max_length=1024
    )
    # ranking heads (model.ranking_heads JSON form; checked by the model's config); none in
    # old versions
    ranking_tasks: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    ranking_hidden: list[Annotated[int, Field(ge=1, le=1 << 16)]] = Field(
        default_factory=lambda: [64], max_length=16
    )


class HSTUSettings(EncoderSettings):
    """``config.json``'s ``hstu``: the fields of ``model.hstu.HSTUConfig``, bounded."""

    dqk: int = Field(0, ge=0, le=1 << 16)
    dv: int = Field(0, ge=0, le=1 << 16)
    alpha: float = Field(RESEARCH_FORM["alpha"], gt=0, allow_inf_nan=False)
    attention_backend: Literal["auto", "reference", "triton"] = "auto"
    layer_norm: Literal["affine", "plain"] = "affine"
    # none in versions before the ranking form (model.hstu.hstu_form): the research code's
    output: Literal["gated", "concat"] = RESEARCH_FORM["output"]
    attention_bias_init: float = Field(RESEARCH_FORM["attention_bias_init"], allow_inf_nan=False)


class SASRecSettings(EncoderSettings):
    """``config.json``'s ``sasrec``: the fields of ``model.sasrec.SASRecConfig``, bounded."""

    ffn_dim: int = Field(0, ge=0, le=1 << 16)
    style: Literal["genrec", "reference"] = "genrec"


class DLRMSettings(BaseModel):
    """``config.json``'s ``dlrm``: the fields of ``model.dlrm.DLRMConfig``, bounded."""

    model_config = ConfigDict(extra="forbid", strict=True)

    num_rows: int = Field(ge=2, le=2**31 - 1)
    num_user_rows: int = Field(4096, ge=1, le=2**31 - 1)
    num_actions: int = Field(256, ge=1, le=1 << 16)
    dim: int = Field(32, ge=1, le=1 << 16)
    hidden: list[Annotated[int, Field(ge=1, le=1 << 16)]] = Field(
        default_factory=lambda: [64, 32], max_length=16
    )
    ranking_tasks: list[dict[str, Any]] = Field(default_factory=list, max_length=64)


class PublishedConfig(BaseModel):
    """A version's ``config.json`` as ``genrec train`` publishes it: ``model`` names the
    encoder (versions before SASRec: always hstu) and the key of that name holds its
    settings."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Literal["hstu", "sasrec", "dlrm"]
    hstu: HSTUSettings | None = None
    sasrec: SASRecSettings | None = None
    dlrm: DLRMSettings | None = None
    trainer: dict[str, Any] = Field(default_factory=dict)  # informational: never read

    @model_validator(mode="after")
    def _one_encoder(self) -> PublishedConfig:
        present = [k for k in ("hstu", "sasrec", "dlrm") if getattr(self, k) is not None]
        if present != [self.model]:
            raise ValueError(f"model {self.model!r} needs its settings under {self.model!r} only")
        return self

    def build(self) -> SequentialEncoder | DLRM:
        """The model these settings describe (on torch's current default device)."""
        if self.dlrm is not None:
            return DLRM(DLRMConfig(**self.dlrm.model_dump()))
        if self.sasrec is not None:
            return SASRec(SASRecConfig(**self.sasrec.model_dump()))
        assert self.hstu is not None  # _one_encoder
        return HSTU(HSTUConfig(**self.hstu.model_dump()))


class Versions(Protocol):
    """What loading reads of a registry's model: a ``Registry``, named by this protocol
    because ``Registry.load_version`` calls this module's (no import cycle)."""

    @property
    def location(self) -> str: ...

    def show(self, ref: str | int) -> Manifest: ...

    def chain(self, ref: str | int) -> list[Manifest]: ...

    def read_file(self, ref: str | int, name: str) -> bytes: ...


def load_version(
    registry: Versions, ref: str | int, max_vocab_bytes: int = DEFAULT_MAX_VOCAB_BYTES
) -> PublishedModel:
    """Version ``ref`` (number, ``vNNNNNN`` or alias) of ``registry``, every file verified
    and parsed as untrusted (see the module docstring), a delta's chain applied;
    ``RegistryError`` otherwise."""
    chain = registry.chain(ref)
    manifest = chain[-1]
    where = _where(registry, manifest)
    config = _config(registry, manifest, where)
    for link in chain[:-1]:
        other = _config(registry, link, _where(registry, link))
        if other.model_dump(exclude={"trainer"}) != config.model_dump(exclude={"trainer"}):
            raise RegistryError(
                f"{where}: it is a delta on {_where(registry, link)}, which holds another model "
                f"({CONFIG_NAME} differs): the chain is damaged; load an older version"
            )
    model = _model(registry, chain, config, where)
    if isinstance(model, DLRM):  # verified, but a PublishedModel retrieves: an encoder's job
        raise RegistryError(
            f"{where}: a dlrm model ranks given candidates only; scoring a catalogue needs an "
            "hstu or sasrec version (model.kind)"
        )
    vocab = _vocab(registry, manifest, model.num_rows, max_vocab_bytes, where)
    live = vocab.live_rows()
    return PublishedModel(
        manifest.version, model.eval(), vocab, torch.from_numpy(live), _row_keys(vocab)
    )


def _config(registry: Versions, manifest: Manifest, where: str) -> PublishedConfig:
    _check_size(manifest, CONFIG_NAME, MAX_CONFIG_BYTES, where, "")
    raw = registry.read_file(manifest.version, CONFIG_NAME)
    try:
        return PublishedConfig.model_validate_json(raw)
    except ValidationError as err:
        raise RegistryError(
            f"{where}: {CONFIG_NAME} is not a model config genrec publishes: "
            f"{summarize(err)}; publish the version again with 'genrec train'"
        ) from None


def _model(
    registry: Versions, chain: list[Manifest], config: PublishedConfig, where: str
) -> SequentialEncoder | DLRM:
    """The model of ``chain``'s last version: its root's weights with each delta applied."""
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated yet
            shapes = config.build()
    except ValueError as err:  # e.g. a ranking task that is no task
        raise RegistryError(f"{where}: {CONFIG_NAME}: {config.model}: {_first_line(err)}") from None
    needed = sum(t.numel() * t.element_size() for t in shapes.state_dict().values())
    root, deltas = chain[0], chain[1:]
    weights = _entry(root, MODEL_FILE, _where(registry, root)).size
    if needed > weights:
        raise RegistryError(
            f"{_where(registry, root)}: {CONFIG_NAME} describes a model of {needed} bytes of "
            f"parameters, but {MODEL_FILE} holds only {weights} bytes: the config does not "
            "belong to these weights; publish the version again"
        )
    # A delta changes at most every row (with an int64 index each) and the rest: 3x bounds it.
    limit = 3 * needed + (1 << 20)
    for link in deltas:
        for name in (MODEL_FILE, ROWS_FILE):
            _check_size(link, name, limit, _where(registry, link), "")
    model = config.build()
    state = _load(registry, root, MODEL_FILE)
    if deltas:
        patches = [
            ({"model": _load(registry, d, MODEL_FILE)}, _load(registry, d, ROWS_FILE))
            for d in deltas
        ]
        try:
            state = rowdelta.compose({"model": state}, patches)["model"]
        except ValueError as err:  # verified rows that do not fit the root's table
            raise RegistryError(f"{where}: its delta chain does not apply: {err}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # verified bytes that are no such model
        raise RegistryError(f"{where}: {MODEL_FILE} does not load: {_first_line(err)}") from None
    return model


def _load(registry: Versions, manifest: Manifest, name: str) -> dict[str, Any]:
    """A tensor file of a version (verified by ``read_file``), loaded without pickle."""
    where = _where(registry, manifest)
    data = registry.read_file(manifest.version, name)
    try:
        return state_from_bytes(data, f"{where}/{name}")
    except CheckpointError as err:
        raise RegistryError(f"{where}: {name} does not load: {_first_line(err)}") from None


def _where(registry: Versions, manifest: Manifest) -> str:
    return f"{version_dir_name(manifest.version)} in {registry.location}"


def _vocab(
    registry: Versions, manifest: Manifest, rows: int, max_bytes: int, where: str
) -> ItemVocabulary:
    hint = " (raise --max-vocab-bytes if the catalogue is that big)"
    _check_size(manifest, VOCAB_FILE, max_bytes, where, hint)
    data = registry.read_file(manifest.version, VOCAB_FILE)
    what = f"{where}: {VOCAB_FILE}"
    try:
        arrays = unpack_arrays(data, max_bytes=max_bytes)
    except ValueError as err:
        raise RegistryError(f"{what}: {err}{hint}") from None
    params = arrays.get("params")
    if params is None or params.dtype.kind not in "iu" or params.shape != (4,):
        raise RegistryError(f"{what}: no 'params' of 4 integers: not a vocabulary snapshot")
    if int(params[0]) != rows:
        raise RegistryError(f"{what}: capacity {int(params[0])}, but the model has {rows} rows")
    try:
        return ItemVocabulary.from_arrays(arrays)
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise RegistryError(
            f"{what}: not a vocabulary snapshot ({type(err).__name__}: {_first_line(err)})"
        ) from None


def _check_size(manifest: Manifest, name: str, limit: int, where: str, hint: str) -> None:
    size = _entry(manifest, name, where).size
    if size > limit:
        raise RegistryError(f"{where}: {name} is {size} bytes, over the limit of {limit}{hint}")


def _entry(manifest: Manifest, name: str, where: str) -> FileEntry:
    entry = manifest.files.get(name)
    if entry is None:
        raise RegistryError(f"{where}: no {name}: not a version 'genrec train' published")
    return entry


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _row_keys(vocab: ItemVocabulary) -> np.ndarray:
    """Row -> key for every row up to the last live one (the output's key column type is
    the vocabulary's: int64 when every key is an int, else strings, as the shards do)."""
    live = vocab.live_rows()
    keys = [vocab.key_of(int(row)) for row in live.tolist()]
    size = int(live[-1]) + 1 if live.size else 1
    if all(type(key) is int for key in keys):
        out = np.zeros(size, dtype=np.int64)
        out[live] = keys
        return out
    out = np.full(size, "", dtype=object)
    out[live] = [str(key) for key in keys]
    return out
