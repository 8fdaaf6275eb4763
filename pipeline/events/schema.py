"""The event schema: field rules, id canonicalisation, action codes and reject reasons.

Every rule about what a valid event is lives here, once. The JSON codec applies the scalar
checkers below to each parsed object; the Arrow codec applies the same rules column-wise; the
pydantic ``Event`` model wraps the same checkers so that it documents (and enforces) exactly the
schema the codecs accept.

Fields (unknown extra fields are *ignored*, so producers can add fields without breaking
consumers that do not know them yet):

============  ========  ===================================================================
field         required  rule
============  ========  ===================================================================
user_id       yes       int, or non-empty str of at most ``max_id_bytes`` UTF-8 bytes
item_id       yes       same as user_id
action        yes       a name from ``ACTION_CODES`` or an int code in 0..``MAX_ACTION_CODE``
timestamp     yes       event time in seconds since the Unix epoch, int or float, finite,
                        in [``min_timestamp``, ``max_timestamp``) (1990-01-01..2100-01-01)
value         no        finite float (fits float32), e.g. a rating or a weight; null = absent
event_id      no        non-empty str of at most ``max_id_bytes`` bytes; null = absent
============  ========  ===================================================================

A null required field counts as missing. Booleans are never accepted as numbers or ids.

Canonical keys (``canonical_key``): an id is an ``int`` when it is an integer that fits int64,
or a string that is the canonical decimal spelling of such an integer (``"5"``, ``"-3"``; not
``"05"``, ``"+5"``, ``" 5"``); every other id is a ``str`` (an integer beyond int64 becomes its
decimal string). So ``5`` and ``"5"`` are the same user, while ``"05"`` is a different one.
Float ids (``5.0``) are rejected as ``bad_type``: they usually mean a producer bug.

Timestamps are stored as int64 seconds, rounded down (``floor``) from floats.
"""

from __future__ import annotations

import math
import numbers
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38

# The one mapping between action names and the int codes the model sees (0 = an unspecified
# interaction, what logs without an action column get). Int codes without a name, up to
# MAX_ACTION_CODE, are accepted too, for producers with their own action taxonomy.
ACTION_CODES: dict[str, int] = {
    "interaction": 0,
    "view": 1,
    "click": 2,
    "rating": 3,
    "add_to_cart": 4,
    "purchase": 5,
}
ACTION_NAMES: dict[int, str] = {code: name for name, code in ACTION_CODES.items()}
MAX_ACTION_CODE = 255

REQUIRED_FIELDS = ("user_id", "item_id", "action", "timestamp")
OPTIONAL_FIELDS = ("value", "event_id")


class RejectReason(StrEnum):
    """Why an input was rejected. Values are the stable strings used in dead letters/metrics."""

    UNKNOWN_CODEC = "unknown_codec"  # the record's codec is neither "json" nor "arrow"
    OVERSIZED_PAYLOAD = "oversized_payload"  # payload larger than the codec's byte limit
    UNDECODABLE = "undecodable"  # JSON payload bytes are not UTF-8, or an id is not Unicode
    BAD_JSON = "bad_json"  # not parseable as JSON, or not a JSON object
    BAD_ARROW = "bad_arrow"  # not a readable Arrow IPC stream
    MISSING_FIELD = "missing_field"  # a required field/column is absent or null
    BAD_TYPE = "bad_type"  # a field/column has a type the schema does not allow
    EMPTY_ID = "empty_id"  # user_id/item_id/event_id is ""
    OVERSIZED_ID = "oversized_id"  # an id longer than max_id_bytes
    BAD_ACTION = "bad_action"  # unknown action name, or code outside 0..MAX_ACTION_CODE
    BAD_TIMESTAMP = "bad_timestamp"  # timestamp is NaN or infinite
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"  # outside [min_timestamp, max_timestamp)
    BAD_VALUE = "bad_value"  # value is not a finite float32


class ValidationLimits(BaseModel):
    """Configurable bounds of the schema (defaults suit Kafka's 1 MB messages and real ids)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_json_bytes: int = Field(64 * 1024, gt=0, description="largest JSON payload, bytes")
    max_arrow_bytes: int = Field(64 * 1024 * 1024, gt=0, description="largest Arrow payload")
    max_id_bytes: int = Field(256, gt=0, description="longest user/item/event id, UTF-8 bytes")
    # 1990: history as old as MovieLens's (1995 on) is valid; milliseconds and small garbage
    # values are still far outside.
    min_timestamp: int = Field(631_152_000, description="earliest event time (1990-01-01)")
    max_timestamp: int = Field(4_102_444_800, description="event time bound (2100-01-01), excl.")


DEFAULT_LIMITS = ValidationLimits()


class EventError(ValueError):
    """One field of one event broke the schema; ``reason`` is a ``RejectReason``."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def describe(reason: RejectReason, field: str, value: Any, limits: ValidationLimits) -> str:
    """The human message for a field-level reject (shared by the JSON and Arrow codecs)."""
    if reason is RejectReason.MISSING_FIELD:
        return f"required field {field!r} is missing or null"
    if reason is RejectReason.BAD_TYPE:
        return f"{field} is {type(value).__name__} {value!r:.80}, expected {_EXPECTED[field]}"
    if reason is RejectReason.EMPTY_ID:
        return f"{field} is an empty string"
    if reason is RejectReason.OVERSIZED_ID:
        size = len(str(value).encode("utf-8", "surrogatepass"))
        return f"{field} is {size} bytes, more than max_id_bytes={limits.max_id_bytes}"
    if reason is RejectReason.BAD_ACTION:
        return (
            f"action {value!r:.80} is neither a known name ({', '.join(ACTION_CODES)}) "
            f"nor an int code in 0..{MAX_ACTION_CODE}"
        )
    if reason is RejectReason.BAD_TIMESTAMP:
        return f"timestamp {value!r} is not a finite number"
    if reason is RejectReason.TIMESTAMP_OUT_OF_RANGE:
        hint = ""
        if limits.min_timestamp <= value // 1000 < limits.max_timestamp:
            hint = " (looks like milliseconds; send seconds since the epoch)"
        return (
            f"timestamp {value!r} is outside [{_date(limits.min_timestamp)}, "
            f"{_date(limits.max_timestamp)}) in seconds since the epoch{hint}"
        )
    if reason is RejectReason.BAD_VALUE:
        return f"value {value!r} is not a finite float32"
    raise AssertionError(f"no field message for reason {reason}")


_EXPECTED = {
    "user_id": "int or str",
    "item_id": "int or str",
    "action": "str name or int code",
    "timestamp": "int or float seconds since the epoch",
    "value": "float or null",
    "event_id": "str or null",
}


def _is_int(raw: Any) -> bool:
    # Integral covers numpy ints; bool is Integral too, and True is never an id, code or time.
    return type(raw) is int or (isinstance(raw, numbers.Integral) and not isinstance(raw, bool))


def _is_number(raw: Any) -> bool:
    return (
        type(raw) is float
        or _is_int(raw)
        or (isinstance(raw, numbers.Real) and not isinstance(raw, bool))
    )


def _is_canonical_decimal(text: str) -> bool:
    """True for "0" and for ASCII digits without a leading zero, optionally after "-"."""
    if text == "0":
        return True
    digits = text[1:] if text[:1] == "-" else text
    return digits.isascii() and digits.isdigit() and digits[0] != "0"


def _check_text(raw: str, field: str, limits: ValidationLimits) -> None:
    """Ids are non-empty, valid Unicode and at most ``max_id_bytes`` long in UTF-8."""
    if not raw:
        raise EventError(RejectReason.EMPTY_ID, describe(RejectReason.EMPTY_ID, field, raw, limits))
    try:
        oversized = len(raw) > limits.max_id_bytes or len(raw.encode()) > limits.max_id_bytes
    except UnicodeEncodeError as err:  # a lone surrogate, e.g. from the JSON escape "\ud800"
        reason = RejectReason.UNDECODABLE
        raise EventError(reason, f"{field} is not valid Unicode text: {err}") from None
    if oversized:
        reason = RejectReason.OVERSIZED_ID
        raise EventError(reason, describe(reason, field, raw, limits))


def canonical_key(raw: Any, field: str, limits: ValidationLimits = DEFAULT_LIMITS) -> int | str:
    """The canonical form of an id (see the module docstring); raises ``EventError``."""
    if type(raw) is int and INT64_MIN <= raw <= INT64_MAX:
        return raw
    if _is_int(raw):  # numpy ints, or ints beyond int64
        number = int(raw)
        if INT64_MIN <= number <= INT64_MAX:
            return number
        raw = str(number)
    if not isinstance(raw, str):
        raise EventError(RejectReason.BAD_TYPE, describe(RejectReason.BAD_TYPE, field, raw, limits))
    _check_text(raw, field, limits)
    if len(raw) <= 20 and _is_canonical_decimal(raw):
        number = int(raw)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    return raw


def check_action(raw: Any, limits: ValidationLimits = DEFAULT_LIMITS) -> int:
    """The int code of an action name or code; raises ``EventError``."""
    if isinstance(raw, str):
        code = ACTION_CODES.get(raw)
        if code is not None:
            return code
    elif _is_int(raw):
        if 0 <= raw <= MAX_ACTION_CODE:
            return int(raw)
    else:
        reason = RejectReason.BAD_TYPE
        raise EventError(reason, describe(reason, "action", raw, limits))
    raise EventError(
        RejectReason.BAD_ACTION, describe(RejectReason.BAD_ACTION, "action", raw, limits)
    )


def check_timestamp(raw: Any, limits: ValidationLimits = DEFAULT_LIMITS) -> int:
    """Event time as int seconds (floored); raises ``EventError``."""
    if type(raw) is int and limits.min_timestamp <= raw < limits.max_timestamp:
        return raw  # the common case, without the generic number checks below
    if not _is_number(raw):
        reason = RejectReason.BAD_TYPE
        raise EventError(reason, describe(reason, "timestamp", raw, limits))
    if not _is_int(raw) and not math.isfinite(raw):
        reason = RejectReason.BAD_TIMESTAMP
        raise EventError(reason, describe(reason, "timestamp", raw, limits))
    if not limits.min_timestamp <= raw < limits.max_timestamp:
        reason = RejectReason.TIMESTAMP_OUT_OF_RANGE
        raise EventError(reason, describe(reason, "timestamp", raw, limits))
    return int(raw) if _is_int(raw) else math.floor(raw)  # int(): numpy ints to Python


def check_value(raw: Any, limits: ValidationLimits = DEFAULT_LIMITS) -> float:
    """The optional value as a float, NaN when absent (None); raises ``EventError``."""
    if raw is None:
        return math.nan
    if not _is_number(raw):
        reason = RejectReason.BAD_TYPE
        raise EventError(reason, describe(reason, "value", raw, limits))
    if not abs(raw) <= FLOAT32_MAX:  # also False for NaN and inf; no float() of huge ints
        raise EventError(
            RejectReason.BAD_VALUE, describe(RejectReason.BAD_VALUE, "value", raw, limits)
        )
    return float(raw)


def check_event_id(raw: Any, limits: ValidationLimits = DEFAULT_LIMITS) -> str | None:
    """The optional event id; raises ``EventError``."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        reason = RejectReason.BAD_TYPE
        raise EventError(reason, describe(reason, "event_id", raw, limits))
    _check_text(raw, "event_id", limits)
    return raw


def _limits(info: ValidationInfo) -> ValidationLimits:
    context = info.context or {}
    return context.get("limits", DEFAULT_LIMITS)


def _require(raw: Any, info: ValidationInfo) -> None:
    # A null required field is reported like an absent one (pydantic's own type: "missing").
    if raw is None:
        field = info.field_name or "field"
        message = describe(RejectReason.MISSING_FIELD, field, raw, _limits(info))
        raise PydanticCustomError(str(RejectReason.MISSING_FIELD), message)


def _pydantic_error(err: EventError) -> PydanticCustomError:
    # The error type is the reject reason, so callers can map errors back to reasons.
    return PydanticCustomError(str(err.reason), err.message)


class Event(BaseModel):
    """One user action, validated and canonicalised (see the module docstring for the rules).

    ``Event.model_validate(obj, context={"limits": ValidationLimits(...)})`` applies custom
    limits. Validation errors carry the ``RejectReason`` value as their pydantic error type.
    After validation ``action`` is the int code and ``timestamp`` int seconds.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: int | str
    item_id: int | str
    action: int
    timestamp: int
    value: float | None = None
    event_id: str | None = None

    @field_validator("user_id", "item_id", mode="before")
    @classmethod
    def _key(cls, raw: Any, info: ValidationInfo) -> int | str:
        _require(raw, info)
        try:
            return canonical_key(raw, info.field_name or "id", _limits(info))
        except EventError as err:
            raise _pydantic_error(err) from None

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, raw: Any, info: ValidationInfo) -> int:
        _require(raw, info)
        try:
            return check_action(raw, _limits(info))
        except EventError as err:
            raise _pydantic_error(err) from None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, raw: Any, info: ValidationInfo) -> int:
        _require(raw, info)
        try:
            return check_timestamp(raw, _limits(info))
        except EventError as err:
            raise _pydantic_error(err) from None

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, raw: Any, info: ValidationInfo) -> float | None:
        try:
            value = check_value(raw, _limits(info))
        except EventError as err:
            raise _pydantic_error(err) from None
        return None if math.isnan(value) else value

    @field_validator("event_id", mode="before")
    @classmethod
    def _event_id(cls, raw: Any, info: ValidationInfo) -> str | None:
        try:
            return check_event_id(raw, _limits(info))
        except EventError as err:
            raise _pydantic_error(err) from None

    def to_json_dict(self) -> dict[str, Any]:
        """The wire form: action as its name when it has one; absent optionals left out."""
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "action": ACTION_NAMES.get(self.action, self.action),
            "timestamp": self.timestamp,
        }
        if self.value is not None:
            out["value"] = self.value
        if self.event_id is not None:
            out["event_id"] = self.event_id
        return out
