"""boto3's managed transfer (``upload_file``: s3transfer, parts in parallel threads), the
reference for syncd's S3 target in ``bench.s3``.

    python -m bench._boto3_upload ENDPOINT BUCKET KEY FILE PART_SIZE CONCURRENCY ACCESS SECRET
"""

import sys

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

endpoint, bucket, key, path, part, concurrency, access, secret = sys.argv[1:9]
client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                      region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                    max_pool_connections=max(10, int(concurrency))))
client.upload_file(path, bucket, key, Config=TransferConfig(
    multipart_threshold=int(part), multipart_chunksize=int(part), max_concurrency=int(concurrency),
    use_threads=True))
