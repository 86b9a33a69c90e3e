#!/usr/bin/env python3
"""CDK entry point: the only place that reads cdk.json context.

Configuration lives under the `batch-celery` context key (see batch_celery/settings.py and the
README table). A bad value stops synth with `error: <key> = <value>: <what is allowed>` and exit 2.
"""

from __future__ import annotations

import os
import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

from batch_celery.settings import CONTEXT_KEY, Settings, SettingsError
from batch_celery.stack import BatchCeleryStack


def build_app(app: cdk.App | None = None) -> tuple[cdk.App, BatchCeleryStack]:
    """The app with its one stack and the cdk-nag AwsSolutions checks as a validation plugin."""
    app = app or cdk.App()
    settings = Settings.from_context(app.node.try_get_context(CONTEXT_KEY))
    # Environment-agnostic on purpose: synth needs no account, region or AWS lookup; the
    # deploying credentials choose where it lands. An existing VPC is the exception: CDK looks it
    # up at synth, in the account and region of the credentials the CLI runs with.
    env = None
    if settings.vpc_id is not None:
        account, region = os.environ.get("CDK_DEFAULT_ACCOUNT"), os.environ.get("CDK_DEFAULT_REGION")
        if not account or not region:
            raise SettingsError(
                f"{CONTEXT_KEY}.vpc_id", settings.vpc_id,
                "CDK looks the VPC up at synth: run cdk with AWS credentials and a region "
                "(CDK_DEFAULT_ACCOUNT and CDK_DEFAULT_REGION are unset)",
            )
        env = cdk.Environment(account=account, region=region)
    stack = BatchCeleryStack(
        app,
        settings.stack_name,
        settings=settings,
        env=env,
        description="Celery worker pools on AWS Batch that scale with their SQS task queues",
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), NIST80053R5Checks(app))
    return app, stack


def main() -> int:
    try:
        # The CLI passes context as JSON in CDK_CONTEXT_JSON; hand-set bad JSON fails in here.
        app = cdk.App()
    except RuntimeError as error:
        print(f"error: the CDK context could not be read: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        app, _ = build_app(app)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        app.synth()
    except RuntimeError as error:
        # cdk-nag v3 runs as a validation plugin: its report is already printed above; the
        # JavaScript stack trace under it would only hide it.
        if "ValidationFailed" not in str(error):
            raise
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
