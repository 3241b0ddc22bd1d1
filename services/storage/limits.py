"""Sizes the AssetService contract fixes, shared by its server and its client."""

# Bytes one PutAsset may carry; larger assets go through the UploadAsset stream.
PUT_LIMIT = 1024 * 1024
# Items and data bytes one BatchPutAssets may carry (under the 8 MiB message limit).
BATCH_PUT_ITEMS = 64
BATCH_PUT_BYTES = 2 * 1024 * 1024
# Default of the largest upload storage accepts (GENMESH_STORAGE_MAX_UPLOAD_BYTES), which the
# HTTP bridge also enforces as the bytes arrive.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
