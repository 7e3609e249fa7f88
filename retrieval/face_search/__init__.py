"""Person similarity search: a FAISS index over all face embeddings (issue 7)."""
