"""The authors' released RaP checkpoints in rap: import (:mod:`rap.release.importer`) and the
release's evaluation recipe (:mod:`rap.release.recipe`)."""
