"""A browser page to look at translations, served by `python -m mm_tf.serve` at `/`.

  * `mm_tf.demo.examples`: the test scenes an export may carry (`<export_dir>/examples/`).
  * `mm_tf.demo.core`: uploads -> raw arrays with the data package's readers, the size
    policy, translation through the server's loaded SavedModels with the REST client's
    composition, and pictures (palette, depth colour map, grey NIR).
  * `mm_tf.demo.page`: the Flask blueprint (`register(app, registry)`) and `static/index.html`.

See docs/serving.md, section "The demo page".
"""
