"""hftl's version, recorded in every file hftl writes (``hftl_model.json``, run markers, caches, exports).

It lives here rather than in ``hftl/__init__.py`` so that those writers, which sit below
:mod:`hftl.predict` in the package layers, can read it without importing the ``hftl`` facade.
"""

__version__ = "0.1.0"
