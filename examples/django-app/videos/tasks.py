"""Light tasks: they stay on the project's Redis broker and its own workers."""

from celery import shared_task


@shared_task(name="videos.notify_uploaded")
def notify_uploaded(key: str) -> None:
    print(f"uploaded: {key}")
