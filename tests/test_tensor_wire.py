"""Tests of the wire codecs: mm_tf.tensor_protos and mm_tf.json_tensors."""

import json

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from mm_tf import json_tensors
from mm_tf import tensor_protos


class TensorProtosTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.product(
      dtype=[np.float32, np.float64, np.int32, np.int64, np.uint8, np.int8, np.uint16,
             np.int16, np.bool_, np.float16],
      shape=[(), (0,), (3,), (2, 0, 3), (2, 5, 4, 3)])
  def test_same_bytes_as_tensorflow_and_round_trips(self, dtype, shape):
    array = (np.random.default_rng(0).normal(size=shape) * 100).astype(dtype)
    serialized = tensor_protos.serialize_tensor(array)
    self.assertEqual(serialized, tf.io.serialize_tensor(tf.constant(array)).numpy())
    parsed = tensor_protos.parse_tensor(serialized)
    self.assertEqual(parsed.dtype, array.dtype)
    self.assertAllEqual(parsed, array)
    message = tensor_protos.array_to_tensor_proto(array)
    self.assertAllEqual(tensor_protos.tensor_proto_to_array(message), array)
    # Typed fields (what real TF Serving may answer with) are read too.
    self.assertAllEqual(tensor_protos.tensor_proto_to_array(tf.make_tensor_proto(array)), array)

  def test_typed_fields_as_real_tf_serving_may_answer(self):
    from tensorflow.core.framework import tensor_pb2  # pylint: disable=g-import-not-at-top
    proto = tensor_pb2.TensorProto(dtype=1, float_val=[0.5, 1.5, 2.5, 3.5])
    proto.tensor_shape.dim.add().size = 2
    proto.tensor_shape.dim.add().size = 2
    self.assertAllEqual(tensor_protos.tensor_proto_to_array(proto), [[0.5, 1.5], [2.5, 3.5]])
    splat = tensor_pb2.TensorProto(dtype=3, int_val=[7])  # One value fills the shape.
    splat.tensor_shape.dim.add().size = 3
    self.assertAllEqual(tensor_protos.tensor_proto_to_array(splat), [7, 7, 7])

  def test_bad_input_gets_a_clear_error(self):
    with self.assertRaisesRegex(ValueError, "dtype .* is not supported"):
      tensor_protos.serialize_tensor(np.array(["a"]))
    short = tensor_protos.serialize_tensor(np.zeros(5, np.float32))[:-4]
    with self.assertRaises(ValueError):
      tensor_protos.parse_tensor(short)
    with self.assertRaisesRegex(ValueError, "needs 20 bytes"):
      tensor_protos.parse_tensor(b"\x08\x01\x12\x04\x12\x02\x08\x05\x22\x04abcd")
    strings = tensor_protos.array_to_tensor_proto(np.array([b"ab", b"c"], dtype=object))
    self.assertAllEqual(tensor_protos.tensor_proto_to_array(strings), [b"ab", b"c"])


class JsonTensorsTest(tf.test.TestCase):

  def test_large_number_arrays_parse_into_numpy_exactly(self):
    rng = np.random.default_rng(0)
    image = rng.uniform(-100, 100, (2, 32, 32, 3)).astype(np.float32)
    switches = rng.integers(0, 256, (1, 16, 16, 4))
    body = json.dumps({"signature_name": "a[1, 2, 3]",
                       "inputs": {"image": image.tolist(), "switches": switches.tolist(),
                                  "small": [1, 2]}}, indent=1)  # Newlines inside arrays.
    parsed = json_tensors.loads(body.encode())
    self.assertIsInstance(parsed["inputs"]["image"], np.ndarray)
    self.assertAllEqual(parsed["inputs"]["image"].astype(np.float32), image)
    self.assertEqual(parsed["inputs"]["switches"].dtype, np.int64)
    self.assertAllEqual(parsed["inputs"]["switches"], switches)
    self.assertEqual(parsed["signature_name"], "a[1, 2, 3]")
    self.assertEqual(parsed["inputs"]["small"], [1, 2])
    nan = json_tensors.loads(json.dumps({"a": np.full((1, 20, 20), np.nan).tolist()}))["a"]
    self.assertTrue(np.isnan(nan).all())

  def test_irregular_arrays_are_left_to_the_json_parser(self):
    for irregular in ([[1.0] * 100, [1.0] * 99], [1.0] * 100 + [[1.0]], [[]] * 100,
                      [True] * 100):
      value = json_tensors.loads(json.dumps({"a": irregular}))["a"]
      self.assertIsInstance(value, list)
      self.assertEqual(value, irregular)
    for malformed in (b'{"a": [' + b"1," * 200 + b"]}", b'{"a": [' + b"1 2," * 200 + b"3]}",
                      b'{"a": [' + b"3e," * 200 + b"3]}", b"{not json"):
      with self.assertRaises(ValueError):
        json_tensors.loads(malformed)

  def test_dumps_writes_numpy_and_non_finite_as_tf_serving(self):
    value = {"a": np.array([[0.5, -2.0]], np.float32), "b": np.int32(3), "c": [1, "x"]}
    self.assertEqual(json.loads(json_tensors.dumps(value)),
                     {"a": [[0.5, -2.0]], "b": 3, "c": [1, "x"]})
    self.assertEqual(json_tensors.dumps({"a": np.array([np.nan, np.inf], np.float32)}),
                     b'{"a":[NaN,Infinity]}')
    rng = np.random.default_rng(1)
    floats = rng.normal(size=(3, 40, 5)).astype(np.float32)
    self.assertAllEqual(json_tensors.loads(json_tensors.dumps({"x": floats}))["x"].astype(
        np.float32), floats)


if __name__ == "__main__":
  tf.test.main()
