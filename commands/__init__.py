"""Console entry points that join the library (``abn``) and the service (``service``)."""
