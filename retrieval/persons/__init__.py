"""Person inference over all archive faces and person retrieval (issue 7)."""
