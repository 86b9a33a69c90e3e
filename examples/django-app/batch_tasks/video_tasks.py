"""The heavy task as it lives in the batch-celery worker image (see "Writing your own tasks"):
next to celery_app.py, listed in CELERY_TASK_MODULES. Here it only names its output."""

from celery_app import app


@app.task(name="video.encode")
def encode(key: str, preset: str) -> dict:
    # A real one downloads the key from S3, runs ffmpeg for minutes, uploads the result.
    return {"key": key, "preset": preset, "output": f"{key.rsplit('.', 1)[0]}.{preset}.mp4"}
