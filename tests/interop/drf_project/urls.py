from django.urls import path
from drf_chunked_upload.views import ChunkedUploadView

# The serializer reverses "chunkedupload-detail" for the absolute session `url`.
urlpatterns = [
    path("chunked_upload/", ChunkedUploadView.as_view(), name="chunkedupload-list"),
    path("chunked_upload/<uuid:pk>/", ChunkedUploadView.as_view(), name="chunkedupload-detail"),
]
