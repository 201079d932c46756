"""Kubeflow Pipelines components: one folder each, a thin typed shell over a `musicvae` command or function.

Each `components/<name>/component.py` holds one `@dsl.component`. Its body imports the library inside the
function (a lightweight component is shipped as source and run in the project image, `components.image.IMAGE`),
calls the same entry point the command line uses, and turns files into typed artifacts.
"""
