"""Person recognition: SVM on face embeddings with rejection of unknowns (issue 7)."""
