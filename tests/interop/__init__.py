"""Interop tests against independent IPFS implementations."""
