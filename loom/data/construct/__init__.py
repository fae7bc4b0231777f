"""Dataset construction (paper §3.4, Fig. 3, appendix A.2): from videos, blogs, image folders and image APIs to
training manifests, behind `loom data frames|caption|filter|compose-pairs|destylize` (commands: data/README.md).

Submodules import their heavy dependencies (PyAV, imagehash, torch) lazily, so importing this package is cheap
(`loom.eval.benchmarks` takes its prompt templates from `prompts`).
"""
