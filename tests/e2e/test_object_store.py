"""The whole mesh with storage's blobs in an S3-compatible object store instead of on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

from genmesh.v1 import generate_service_pb2, job_pb2
from services.common.parameters import dict_to_struct
from services.storage.blobs import blob_path
from tests.conftest import Database
from tests.fakes.object_store import ObjectStore
from tests.mesh import running_mesh


async def test_a_job_outputs_land_in_the_bucket_and_download_from_it(
    nats_url: str,
    nats_prefix: str,
    database: Database,
    tmp_path: Path,
    object_store: ObjectStore,
) -> None:
    bucket = object_store.new_bucket()
    on_s3 = {
        "GENMESH_STORAGE_S3_BUCKET": bucket,
        "GENMESH_STORAGE_S3_ENDPOINT_URL": object_store.endpoint_url,
        "GENMESH_STORAGE_S3_PREFIX": "jobs/",
    }
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        storage_overrides=on_s3,
    ) as mesh:
        spec = job_pb2.JobSpec(
            task=job_pb2.TASK_TEXT_TO_IMAGE,
            prompt="a red fox in snow",
            parameters=dict_to_struct({"width": 96, "height": 64, "steps": 2}),
        )
        job = (await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))).job
        final, events = await mesh.finished(job.id)

        assert final.state == job_pb2.JOB_STATE_COMPLETED, final.error
        assert any(e.state == job_pb2.JOB_STATE_PREVIEW_READY for e in events)
        stored = [*final.assets, final.preview]
        for asset in stored:
            data = await mesh.assets.download(asset.id, tenant="default")
            assert hashlib.sha256(data).hexdigest() == asset.sha256
        keys = {o["Key"] for o in object_store.client().list_objects_v2(Bucket=bucket)["Contents"]}
        assert keys == {f"jobs/{blob_path(a.sha256)}" for a in stored}
        # Nothing on the local disk but the (empty) staging area.
        assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
