"""Sizes the AssetService contract fixes, shared by its server and its client."""

# Bytes one PutAsset may carry; larger assets go through the UploadAsset stream.
PUT_LIMIT = 1024 * 1024
