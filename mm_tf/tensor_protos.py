"""numpy arrays <-> TensorProto, as serialized bytes (no TensorFlow) and as messages.

Two places carry tensors as TensorProtos:
  * the `serving_bytes` signatures (REST): every `*_bytes` element is the serialized
    TensorProto of one example, as `tf.io.serialize_tensor` writes it. `serialize_tensor`
    and `parse_tensor` here read and write that format with numpy and the standard library
    only, so the REST client stays free of TensorFlow;
  * gRPC `PredictRequest` / `PredictResponse` (`array_to_tensor_proto`,
    `tensor_proto_to_array`, which import TensorFlow's proto classes when first called).

Numeric tensors travel as little-endian `tensor_content` (TF's in-memory layout on every
platform it supports), never as the repeated `float_val`-style fields, which cost a
varint or a fixed field per element.
"""

import numpy as np

# tensorflow/core/framework/types.proto (DataType enum values).
DTYPE_ENUMS = {
    np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3,
    np.dtype(np.uint8): 4, np.dtype(np.int16): 5, np.dtype(np.int8): 6,
    np.dtype(np.int64): 9, np.dtype(np.bool_): 10, np.dtype(np.uint16): 17,
    np.dtype(np.float16): 19, np.dtype(np.uint32): 22, np.dtype(np.uint64): 23,
}
DT_STRING = 7
NUMPY_DTYPES = {enum: dtype for dtype, enum in DTYPE_ENUMS.items()}
# TF Serving's metadata spells dtypes as the enum names.
DTYPE_NAMES = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_INT32": np.int32,
               "DT_UINT8": np.uint8, "DT_INT16": np.int16, "DT_INT8": np.int8,
               "DT_INT64": np.int64, "DT_BOOL": np.bool_, "DT_UINT16": np.uint16,
               "DT_HALF": np.float16, "DT_UINT32": np.uint32, "DT_UINT64": np.uint64,
               "DT_STRING": np.object_}

# Protobuf wire format: tag = field_number << 3 | wire_type.
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_TENSOR_DTYPE, _TENSOR_SHAPE, _TENSOR_CONTENT = 1, 2, 4  # TensorProto fields.
_SHAPE_DIM, _SHAPE_UNKNOWN_RANK = 2, 3                    # TensorShapeProto fields.
_DIM_SIZE = 1                                             # TensorShapeProto.Dim field.


def _varint(value):
  out = bytearray()
  value &= (1 << 64) - 1  # Negative int64 values are written as ten-byte two's complement.
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number, wire_type, payload=b"", value=None):
  tag = _varint(number << 3 | wire_type)
  if wire_type == _VARINT:
    return tag + _varint(value)
  return tag + _varint(len(payload)) + payload


def serialize_tensor(array) -> bytes:
  """Serialized TensorProto of a numeric array, byte-compatible with `tf.io.parse_tensor`.

  Args:
    array: A numpy array (or anything `np.asarray` takes) of a dtype in `DTYPE_ENUMS`.

  Returns:
    The bytes `tf.io.serialize_tensor` would write for the same tensor.

  Raises:
    ValueError: the dtype has no TensorProto equivalent here (e.g. strings, objects).
  """
  array = np.asarray(array)
  if array.dtype not in DTYPE_ENUMS:
    raise ValueError(f"serialize_tensor: dtype {array.dtype} is not supported; use one of "
                     f"{sorted(str(d) for d in DTYPE_ENUMS)}.")
  shape = b"".join(_field(_SHAPE_DIM, _LENGTH_DELIMITED,
                          _field(_DIM_SIZE, _VARINT, value=int(d)) if d else b"")
                   for d in array.shape)
  content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
  return (_field(_TENSOR_DTYPE, _VARINT, value=DTYPE_ENUMS[array.dtype])
          + _field(_TENSOR_SHAPE, _LENGTH_DELIMITED, shape)
          + (_field(_TENSOR_CONTENT, _LENGTH_DELIMITED, content) if content else b""))


def _read_varint(data, position):
  result = shift = 0
  while True:
    if position >= len(data):
      raise ValueError("truncated varint")
    byte = data[position]
    position += 1
    result |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return result, position
    shift += 7
    if shift > 63:
      raise ValueError("varint longer than 10 bytes")


def _fields(data):
  """Yields (field number, wire type, value) of a serialized message (memoryview values)."""
  position = 0
  while position < len(data):
    tag, position = _read_varint(data, position)
    number, wire_type = tag >> 3, tag & 7
    if wire_type == _VARINT:
      value, position = _read_varint(data, position)
    elif wire_type == _LENGTH_DELIMITED:
      length, position = _read_varint(data, position)
      if position + length > len(data):
        raise ValueError("truncated length-delimited field")
      value, position = data[position:position + length], position + length
    elif wire_type in (_FIXED64, _FIXED32):
      size = 8 if wire_type == _FIXED64 else 4
      value, position = data[position:position + size], position + size
    else:
      raise ValueError(f"unsupported wire type {wire_type}")
    yield number, wire_type, value


def parse_tensor(data) -> np.ndarray:
  """Inverse of `serialize_tensor` (and of `tf.io.serialize_tensor` for numeric tensors).

  Args:
    data: The serialized TensorProto (bytes, bytearray or memoryview).

  Returns:
    A numpy array owning its memory.

  Raises:
    ValueError: not a TensorProto of a supported dtype with `tensor_content` matching its
      shape (the typed `*_val` fields, which `tf.io.serialize_tensor` never writes for
      numeric tensors, are not read here).
  """
  view = memoryview(bytes(data) if not isinstance(data, (bytes, memoryview)) else data)
  dtype_enum, shape, content, other = 0, [], b"", []
  for number, wire_type, value in _fields(view):
    if number == _TENSOR_DTYPE and wire_type == _VARINT:
      dtype_enum = value
    elif number == _TENSOR_SHAPE and wire_type == _LENGTH_DELIMITED:
      for dim_number, dim_type, dim in _fields(value):
        if dim_number == _SHAPE_UNKNOWN_RANK and dim_type == _VARINT and dim:
          raise ValueError("TensorProto has an unknown rank.")
        if dim_number == _SHAPE_DIM and dim_type == _LENGTH_DELIMITED:
          size = 0
          for size_number, size_type, size_value in _fields(dim):
            if size_number == _DIM_SIZE and size_type == _VARINT:
              size = size_value
          shape.append(size)
    elif number == _TENSOR_CONTENT and wire_type == _LENGTH_DELIMITED:
      content = value
    elif number != 3:  # 3 = version_number, unused.
      other.append(number)
  if dtype_enum not in NUMPY_DTYPES:
    raise ValueError(f"TensorProto dtype enum {dtype_enum} is not supported here.")
  dtype = NUMPY_DTYPES[dtype_enum].newbyteorder("<")
  count = int(np.prod(shape, dtype=np.int64))
  if len(content) != count * dtype.itemsize:
    detail = f" (it has the typed fields {sorted(set(other))})" if other else ""
    raise ValueError(f"TensorProto of shape {shape} and dtype {dtype.name} needs "
                     f"{count * dtype.itemsize} bytes of tensor_content, got "
                     f"{len(content)}{detail}.")
  return np.frombuffer(content, dtype).astype(NUMPY_DTYPES[dtype_enum]).reshape(shape)


# ---------------------------------------------------------------- TensorProto messages
def array_to_tensor_proto(array):
  """numpy array -> `tensorflow.TensorProto` message (bytes as DT_STRING, else content).

  Imports TensorFlow's proto module (the gRPC stubs need it anyway).
  """
  from tensorflow.core.framework import tensor_pb2  # pylint: disable=g-import-not-at-top
  array = np.asarray(array)
  proto = tensor_pb2.TensorProto()
  for d in array.shape:
    proto.tensor_shape.dim.add().size = int(d)
  if array.dtype.kind in "OSU":
    proto.dtype = DT_STRING
    proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode()
                            for v in array.reshape(-1))
    return proto
  if array.dtype not in DTYPE_ENUMS:
    raise ValueError(f"array_to_tensor_proto: dtype {array.dtype} is not supported.")
  proto.dtype = DTYPE_ENUMS[array.dtype]
  proto.tensor_content = np.ascontiguousarray(
      array, dtype=array.dtype.newbyteorder("<")).tobytes()
  return proto


def tensor_proto_to_array(proto) -> np.ndarray:
  """`tensorflow.TensorProto` message -> numpy array, any of its encodings.

  `tensor_content` is read with one copy; the typed repeated fields (`float_val`, ...,
  which real TF Serving may answer with) go through `tf.make_ndarray`.

  Raises:
    ValueError: the content does not match the declared dtype and shape.
  """
  dtype = NUMPY_DTYPES.get(proto.dtype)
  shape = [d.size for d in proto.tensor_shape.dim]
  if dtype is not None and proto.tensor_content:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if len(proto.tensor_content) != count * dtype.itemsize:
      raise ValueError(f"tensor_content holds {len(proto.tensor_content)} bytes; shape "
                       f"{shape} of {dtype.name} needs {count * dtype.itemsize}.")
    return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).astype(
        dtype).reshape(shape)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    return tf.make_ndarray(proto)
  except (TypeError, ValueError) as e:
    raise ValueError(f"TensorProto (dtype enum {proto.dtype}, shape {shape}) cannot be "
                     f"read: {e}") from e

