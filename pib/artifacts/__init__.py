"""Signed artifacts: deterministic archives, Ed25519 signing, signed metadata,
transfer to and from stores, and the workspace's trust and publishing policy.

Component artifacts and CBE prefix tarballs both go through this package.
"""
