"""Installs mm_tf, the TensorFlow/Keras implementation of mix and match networks.

Dependency choices (why each is here):
  * tensorflow>=2.16 brings Keras 3, the only Keras we support; every layer is Keras 3's
    own (instance normalisation is `GroupNormalization(groups=-1)`), no add-on package.
  * tensorflow-datasets: the real datasets are tfds builders (manual download), so users
    get caching, splits and `tfds.load` for free instead of hand-written readers.
  * absl-py: flags/flagfiles for the CLIs, as in the TF Model Garden and SimCLR.
  * pillow: reading/writing JPEG, PNG and TIFF files of the datasets (NIR is TIFF, which
    tf.io cannot decode).
  * matplotlib: figures of the evaluation (qualitative grids, colour maps).
  * tqdm: the console progress bar with ETA.
  * tensorflow-serving-api: TF Serving's own protos to write/verify models.config and to
    speak its request formats, rather than re-declaring them.
  * flask (werkzeug): the local TF-Serving-compatible REST server, instead of parsing HTTP.
  * selenium (tests only): drives Debian's headless chromium + chromium-driver in the demo
    page's browser tests (tests/test_demo.py); `.ci/run` installs those two apt packages.
  * grpcio: TF Serving's gRPC API (PredictionService, ModelService) in the local server
    and the client, from the stubs tensorflow-serving-api ships.
  * orjson: writes numpy arrays straight to JSON (and parses the small rest of a request)
    in the REST server and client, instead of tolist() + json, many times faster.
"""
import setuptools

setuptools.setup(
    name="mm_tf",
    version="0.1.0",
    description="Mix and match networks (M&MNets) for zero-pair cross-modal image translation",
    packages=setuptools.find_packages(include=["mm_tf", "mm_tf.*"]),
    package_data={"mm_tf": ["data/*.json", "data/*.csv", "data/*.txt", "demo/static/*.html"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16,<2.23",
        "keras>=3.0,<4",
        "tensorflow-datasets>=4.9,<5",
        "absl-py>=1.0",
        "numpy>=1.24",
        "pillow>=9.0",
        "matplotlib>=3.6",
        "tqdm>=4.60",
        "tensorflow-serving-api>=2.16,<2.23",
        "flask>=2.2,<4",
        "grpcio>=1.60",
        "orjson>=3.9",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "selenium>=4.11"],
    },
)
