"""Image similarity search: hash-code index backends (FAISS, Elasticsearch) and the
query-by-example service the other apps call (issue 6)."""
