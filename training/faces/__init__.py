"""The face pipeline: MTCNN detection, alignment, quality filters, FaceNet embeddings,
and the face-indexing job over the archive (issue 7)."""
