"""Upload -> a Video row, a light task on Redis, the encode on batch-celery; then ask how it stands."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from mysite.batch import batch_app

from .models import Video
from .tasks import notify_uploaded


@require_POST
def encode(request: HttpRequest) -> JsonResponse:
    key = request.POST.get("key", "")
    if not key:
        return JsonResponse({"error": "key is missing; expected the S3 key of the upload"}, status=400)
    video = Video.objects.create(key=key)
    notify_uploaded.delay(key)  # the project's Redis broker
    # Minutes of CPU: to batch-celery, routed by name to the pool whose tasks match "video.*".
    result = batch_app().send_task("video.encode", kwargs={"video_id": video.pk, "preset": "1080p"})
    return JsonResponse({"task_id": result.id, "video_id": video.pk}, status=202)


@require_GET
def encode_status(request: HttpRequest, task_id: str) -> JsonResponse:
    result = batch_app().AsyncResult(task_id)  # the stack's result table (DynamoDB)
    body = {"task_id": task_id, "state": result.state}
    if result.successful():
        body["result"] = result.result
    elif result.failed():
        body["error"] = repr(result.result)
    return JsonResponse(body)
