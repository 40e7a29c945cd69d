"""Settings for the drf-chunked-upload interop server.

Paths come from the environment (set by ``tests.support.drf.DrfServer``):
``SYNCD_DRF_DB`` (sqlite file), ``SYNCD_DRF_MEDIA_ROOT`` (where uploads are stored),
``SYNCD_DRF_UPLOAD_TMP`` (Django's FILE_UPLOAD_TEMP_DIR for parts spooled to disk).
Optional: ``SYNCD_DRF_EXPIRATION_SECONDS`` (session lifetime, drf's default is one day) and
``SYNCD_DRF_MAX_BYTES`` (largest accepted total, drf's default is no limit).
"""

import os
from datetime import timedelta


def _env_path(name: str) -> str:
    try:
        return os.environ[name]
    except KeyError:
        raise RuntimeError(f"{name} must be set (see tests/support/drf.py)") from None


SECRET_KEY = "syncd-interop-tests-not-a-secret-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_chunked_upload",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "drf_project.urls"
WSGI_APPLICATION = "drf_project.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _env_path("SYNCD_DRF_DB"),
        # waitress serves with several threads; wait for the write lock instead of failing
        "OPTIONS": {"timeout": 30},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
TIME_ZONE = "UTC"

MEDIA_ROOT = _env_path("SYNCD_DRF_MEDIA_ROOT")
MEDIA_URL = "/media/"
FILE_UPLOAD_TEMP_DIR = _env_path("SYNCD_DRF_UPLOAD_TMP")
# Parts above 2.5 MiB (Django's default) are spooled to FILE_UPLOAD_TEMP_DIR; the
# request-body limits below only count non-file form data, so 50 MiB parts pass.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2621440
DATA_UPLOAD_MAX_MEMORY_SIZE = 2621440

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

# Concrete drf_chunked_upload.models.ChunkedUpload (table drf_chunked_upload_chunkedupload).
DRF_CHUNKED_UPLOAD_ABSTRACT_MODEL = False
if os.environ.get("SYNCD_DRF_EXPIRATION_SECONDS"):
    DRF_CHUNKED_UPLOAD_EXPIRATION_DELTA = timedelta(
        seconds=float(os.environ["SYNCD_DRF_EXPIRATION_SECONDS"])
    )
if os.environ.get("SYNCD_DRF_MAX_BYTES"):
    DRF_CHUNKED_UPLOAD_MAX_BYTES = int(os.environ["SYNCD_DRF_MAX_BYTES"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
