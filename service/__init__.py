"""The HTTP service around an ``abn`` model directory."""
