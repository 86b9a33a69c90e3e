"""The project's tasks, on its own Celery app (mysite/celery.py), as Celery's Django guide has them.

notify_uploaded is light: the web tier sends it with .delay(), to the project's Redis broker and
its own workers. encode is heavy: the web tier sends it by name through the batch app
(mysite/batch.py), whose routes take video.* to batch-celery's encode pool, and the pool's
workers run this same project (CELERY_APP=mysite), Django settings, models and database included.
"""

from celery import shared_task

from .models import Video


@shared_task(name="videos.notify_uploaded")
def notify_uploaded(key: str) -> None:
    print(f"uploaded: {key}")


@shared_task(name="video.encode")
def encode(video_id: int, preset: str) -> dict:
    # A row that is gone fails the task with Video.DoesNotExist: its reason shows in the demo's
    # event log and in `python -m batch_celery status`, and the message ends in the DLQ.
    video = Video.objects.get(pk=video_id)
    # A real one downloads video.key from S3, runs ffmpeg for minutes, uploads the result.
    video.output = f"{video.key.rsplit('.', 1)[0]}.{preset}.mp4"
    video.status = Video.Status.ENCODED
    video.save(update_fields=["output", "status"])
    return {"video": video.pk, "key": video.key, "preset": preset, "output": video.output}
