"""The OpenAI-compatible REST bridge: Starlette in front, gRPC to a tokenwire worker behind.

It never imports torch or the `service` package.
"""
