"""JSON with large numeric arrays, parsed into numpy and written from numpy directly.

`json.loads` of a TF Serving request turns a [1, 256, 256, 1] image into 65,536 Python
floats inside 65,536 one-element lists before numpy sees them; `tolist()` + `json.dumps`
do the same in reverse. Here:

  * `loads` finds every large array of numbers in the body with one regular-expression
    scan (strings are skipped as whole tokens, so brackets inside strings are never
    mistaken for arrays), checks its bracket structure is rectangular, and parses its
    numbers with numpy's C parser (`np.loadtxt`); the small rest of the document goes
    through orjson (or the standard library). An array that is not a clean rectangle of
    numbers (ragged, empty, mixed, odd tokens) is left to the JSON parser, so malformed
    requests get exactly the errors they got before.
  * `dumps` writes numpy arrays with orjson's native numpy support (C speed, shortest
    round-trip float formatting). Non-finite floats go through the standard library,
    which writes `NaN` / `Infinity` as TF Serving does (orjson would write `null`).

Only numpy and the standard library are required; orjson is used when installed.
"""

import json
import re

import numpy as np

try:
  import orjson  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover - orjson is an install requirement; stay usable.
  orjson = None

# Arrays shorter than this stay with the JSON parser: the numpy path costs more for them.
MIN_FAST_ARRAY_BYTES = 256
_PLACEHOLDER_PREFIX = "\x00mm_tf_array_"
# A JSON string (unrolled loop, so long base64 strings are matched at C speed) or an array
# containing only number characters, whitespace, commas and brackets.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|\[[-+0-9.eEINafinty,\s\[\]]*\]')
_NUMBER_AND_SPACE = b"-+0123456789.eEINaftiny \t\r\n"
_FLOAT_MARKERS = (b".", b"e", b"E", b"N", b"I")
_WHITESPACE_TO_SPACE = bytes.maketrans(b"\t\r\n", b"   ")


def _shape_of(structure):
  """Shape of a rectangular bracket structure like b"[[,],[,]]", or None.

  The shape is read off the first element at every level and then confirmed by
  rebuilding the structure that shape implies and comparing bytes.
  """
  rank = len(structure) - len(structure.lstrip(b"["))
  if rank == 0:
    return None
  shape = [0] * rank
  first_close = structure.find(b"]")
  if first_close <= rank - 1:
    return None  # Empty innermost array.
  shape[-1] = first_close - rank + 1
  expected = b"[" + b"," * (shape[-1] - 1) + b"]"
  for level in range(rank - 2, -1, -1):
    # The first array at `level` ends at the first run of (rank - level) closing brackets.
    run = b"]" * (rank - level)
    end = structure.find(run, level)
    if end < 0:
      return None
    length = end + len(run) - level  # From its "[" (at index `level`) to its last "]".
    count, remainder = divmod(length - 1, len(expected) + 1)
    if remainder or count < 1:
      return None
    shape[level] = count
    expected = b"[" + b",".join([expected] * count) + b"]"
  return shape if structure == expected else None


def parse_numeric_array(text: bytes):
  """A JSON array of numbers -> numpy array (float64 if any float token, else int64).

  Returns:
    The array, or None when `text` is not a non-empty rectangular array of numbers that
    numpy parses completely (the caller then falls back to a JSON parser).
  """
  structure = text.translate(None, _NUMBER_AND_SPACE)
  shape = _shape_of(structure)
  if shape is None:
    return None
  # One line of comma-separated numbers: loadtxt's C parser rejects empty fields and
  # malformed tokens ("1 2", "3e", "0x10"); JSON's own whitespace may hold newlines.
  numbers = text.translate(_WHITESPACE_TO_SPACE, b"[]")
  is_float = any(marker in numbers for marker in _FLOAT_MARKERS)
  try:
    values = np.loadtxt([numbers.decode("ascii")], delimiter=",", ndmin=1,
                        dtype=np.float64 if is_float else np.int64)
  except (ValueError, OverflowError, UnicodeDecodeError):
    return None
  if values.size != int(np.prod(shape)):
    return None
  return values.reshape(shape)


def _loads_document(data: bytes):
  if orjson is not None:
    try:
      return orjson.loads(data)
    except orjson.JSONDecodeError:
      pass  # NaN/Infinity tokens (TF Serving accepts them) or a real error: ask json.
  return json.loads(data)


def _substitute(value, arrays):
  if isinstance(value, dict):
    return {k: _substitute(v, arrays) for k, v in value.items()}
  if isinstance(value, list):
    return [_substitute(v, arrays) for v in value]
  if isinstance(value, str) and value.startswith(_PLACEHOLDER_PREFIX):
    return arrays[int(value[len(_PLACEHOLDER_PREFIX):])]
  return value


def loads(data):
  """Parses JSON; large arrays of numbers come back as numpy arrays (float64 / int64).

  Args:
    data: The JSON document (bytes or str).

  Returns:
    The document as `json.loads` would return it, except that arrays of numbers of at
    least `MIN_FAST_ARRAY_BYTES` characters are numpy arrays.

  Raises:
    ValueError: Not valid JSON (`json.JSONDecodeError` or orjson's, both ValueErrors), or
      not UTF-8.
  """
  if isinstance(data, str):
    data = data.encode("utf-8")
  pieces, arrays, last = [], [], 0
  for match in _TOKENS.finditer(data):
    start, end = match.span()
    if end - start < MIN_FAST_ARRAY_BYTES or data[start] != ord("["):
      continue
    array = parse_numeric_array(match.group())
    if array is None:
      continue
    pieces += [data[last:start], b'"\\u0000mm_tf_array_%d"' % len(arrays)]
    arrays.append(array)
    last = end
  if not arrays:
    return _loads_document(data)
  pieces.append(data[last:])
  return _substitute(_loads_document(b"".join(pieces)), arrays)


def _has_non_finite(value):
  if isinstance(value, np.ndarray):
    return value.dtype.kind in "fc" and not np.isfinite(value).all()
  if isinstance(value, dict):
    return any(_has_non_finite(v) for v in value.values())
  if isinstance(value, (list, tuple)):
    return any(_has_non_finite(v) for v in value)
  if isinstance(value, (float, np.floating)):
    return not np.isfinite(value)
  return False


def _to_builtin(value):
  if isinstance(value, np.ndarray):
    return np.ascontiguousarray(value) if orjson is not None else value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value) -> bytes:
  """Compact JSON bytes of `value`, which may hold numpy arrays and scalars."""
  if orjson is not None and not _has_non_finite(value):
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_to_builtin)
  return json.dumps(value, separators=(",", ":"),
                    default=lambda v: v.tolist() if isinstance(v, np.ndarray)
                    else _to_builtin(v)).encode("utf-8")
