"""Deep hashing and unsupervised (ITQ) hash codes for image similarity search (issue 6)."""
