"""`nmt-serve`: translation over HTTP with batching across requests, and a page that shows the
gates and the attention (`nmt.service.app`, `nmt.service.engine`)."""
