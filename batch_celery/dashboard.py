"""One CloudWatch dashboard per stack: a row for the whole stack, then a row per pool.

Layout (24 columns wide, every widget 6 high; ``DashboardUrl`` output opens it):

    stack   | alarms (every alarm that notifies the topic) 12 | scaler errors 4 | worker jobs failed 4 | events DLQ 4
    pool P  | backlog and oldest age 6 | workers wanted vs active 6 | tasks per minute 4 | wait and run p50/p95 4 | DLQ 4
    scaler  | decisions that started workers, and why 24

A Lambda pool's row shows its function's concurrent executions, errors and throttles where a Batch
pool's shows its workers, and its function-errors alarm joins the stack row's alarms.

- backlog: the pool queue's visible + in flight + delayed messages (stacked), the oldest message's
  age on the right axis;
- workers wanted vs active: the scaler's ``wanted`` and ``active`` (its EMF lines, Maximum per
  minute) and what it ``submitted`` (Sum); in alarms mode there is no scaler, and the widget shows
  the workers' tasks in flight instead (SQS's not-visible count), the closest thing to busy workers;
- tasks per minute: ``tasks`` (Sum) of the outcomes succeeded, failed and retried;
- wait and run: ``wait_seconds`` and ``run_seconds`` at p50 and p95;
- DLQ: the pool's dead-letter queue depth (any message there is an alarm).

A last row (scaler mode) lists the scaler's latest decisions that started workers, with the run
time, start and coverage each was sized from (a Logs Insights table of its decision lines).

The task and scaler metrics are the EMF lines of emf.py, in the stack's namespace; their names
come from that module only.

With ``schedules``, ``add_schedules_row`` puts a row of them last: the last fires (a Logs Insights
table of the sender's lines: schedule, task, task id, queue, scheduled time, lag) 12 | tasks sent
per schedule 6 | the sender's failed runs and throttles 6.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from batch_celery_container import emf

from .monitoring import Monitoring
from .pool import WorkerPool
from .scaling import PoolAlarms, Scaler

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .schedules import Schedules

MINUTE = Duration.minutes(1)
HEIGHT = 6


class WorkersDashboard(Construct):
    """The stack's dashboard; ``dashboard_name`` for the outputs."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        pools: Mapping[str, WorkerPool],
        pool_alarms: Mapping[str, PoolAlarms],
        metrics_namespace: str,
        monitoring: Monitoring,
        scaler: Scaler | None,
        events_dead_letter_queue: sqs.IQueue,
    ) -> None:
        super().__init__(scope, construct_id)
        self.namespace = metrics_namespace
        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", default_interval=Duration.hours(3), period_override=cloudwatch.PeriodOverride.AUTO,
        )
        self.dashboard.add_widgets(*self._stack_row(pool_alarms, monitoring, scaler, events_dead_letter_queue))
        for name, pool in pools.items():
            self.dashboard.add_widgets(*self._pool_row(name, pool, scaler is not None))
        if scaler is not None:
            self.dashboard.add_widgets(self._decisions(scaler))

    def _decisions(self, scaler: Scaler) -> cloudwatch.IWidget:
        """The scaler's last decisions that started workers, with the figures they came from
        (handler.scale's record: the run time and its basis, the start, what a new worker takes
        within the target wait and what busy or starting workers take)."""
        return cloudwatch.LogQueryWidget(
            title="Scaler: decisions that started workers, and why",
            log_group_names=[scaler.log_group.log_group_name],
            view=cloudwatch.LogQueryVisualizationType.TABLE,
            query_lines=[
                "fields @timestamp, pool, visible, in_flight, active, wanted, submitted, sizing.task_seconds, "
                "sizing.task_seconds_basis, sizing.start_seconds, sizing.per_new_worker, sizing.free_up, "
                "messages_per_worker",
                "filter submitted > 0",
                "sort @timestamp desc",
                "limit 20",
            ],
            width=24, height=HEIGHT,
        )

    @property
    def dashboard_name(self) -> str:
        return self.dashboard.dashboard_name

    # -- the whole stack ------------------------------------------------------------------------

    def _stack_row(self, pool_alarms: Mapping[str, PoolAlarms], monitoring: Monitoring, scaler: Scaler | None,
                   events_dead_letter_queue: sqs.IQueue) -> list[cloudwatch.IWidget]:
        alarms = [*monitoring.task_dead_letter_alarms.values(), monitoring.events_dead_letter_alarm,
                  *(a.sla_alarm for a in pool_alarms.values()),
                  *(a.errors_alarm for a in pool_alarms.values() if hasattr(a, "errors_alarm"))]
        if monitoring.scaler_failing_alarm is not None:
            alarms.append(monitoring.scaler_failing_alarm)
        row: list[cloudwatch.IWidget] = [cloudwatch.AlarmStatusWidget(
            title="Alarms that notify the alarm topic", alarms=alarms, width=12, height=HEIGHT,
        )]
        if scaler is not None:
            row.append(cloudwatch.GraphWidget(
                title="Scaler: failed runs and throttles",
                left=[scaler.function.metric_errors(period=MINUTE, statistic=cloudwatch.Stats.SUM, label="failed runs"),
                      scaler.function.metric_throttles(period=MINUTE, statistic=cloudwatch.Stats.SUM,
                                                       label="throttled")],
                width=4, height=HEIGHT,
            ))
        else:
            row.append(cloudwatch.TextWidget(
                markdown="**Scaler**\n\nNone: `scaling_mode` is `alarms`; each pool's alarm rules submit its workers.",
                width=4, height=HEIGHT,
            ))
        row.append(cloudwatch.GraphWidget(
            title="Worker jobs that ended FAILED",
            left=[cloudwatch.Metric(
                namespace="AWS/Events", metric_name="TriggeredRules",
                dimensions_map={"RuleName": monitoring.failed_jobs_rule.rule_name},
                period=MINUTE, statistic=cloudwatch.Stats.SUM, label="failed worker jobs",
            )],
            width=4, height=HEIGHT,
        ))
        row.append(cloudwatch.GraphWidget(
            title="Undelivered events (events DLQ)",
            left=[events_dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=MINUTE, statistic=cloudwatch.Stats.MAXIMUM, label="messages")],
            width=4, height=HEIGHT,
        ))
        return row

    # -- one pool -------------------------------------------------------------------------------

    def _metric(self, name: str, pool: str, statistic: str, label: str, **dimensions: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace=self.namespace, metric_name=name, dimensions_map={emf.POOL: pool, **dimensions},
            period=MINUTE, statistic=statistic, label=label,
        )

    def _pool_row(self, name: str, pool: WorkerPool, has_scaler: bool) -> list[cloudwatch.IWidget]:
        queue = pool.queue
        backlog = cloudwatch.GraphWidget(
            title=f"{name}: backlog and oldest message age",
            left=[
                queue.metric_approximate_number_of_messages_visible(
                    period=MINUTE, statistic=cloudwatch.Stats.MAXIMUM, label="waiting"),
                queue.metric_approximate_number_of_messages_not_visible(
                    period=MINUTE, statistic=cloudwatch.Stats.MAXIMUM, label="in flight"),
                queue.metric_approximate_number_of_messages_delayed(
                    period=MINUTE, statistic=cloudwatch.Stats.MAXIMUM, label="delayed"),
            ],
            right=[queue.metric_approximate_age_of_oldest_message(
                period=MINUTE, statistic=cloudwatch.Stats.MAXIMUM, label="oldest message age (s)")],
            stacked=True, width=6, height=HEIGHT,
        )
        function = getattr(pool, "function", None)
        if function is not None:
            # A Lambda pool: the mapping's invocations stand where a Batch pool's workers do.
            workers = cloudwatch.GraphWidget(
                title=f"{name}: functions running (Lambda, at most {pool.props.max_workers})",
                left=[function.metric("ConcurrentExecutions", period=MINUTE, statistic=cloudwatch.Stats.MAXIMUM,
                                      label="running"),
                      function.metric_errors(period=MINUTE, statistic=cloudwatch.Stats.SUM, label="errors"),
                      function.metric_throttles(period=MINUTE, statistic=cloudwatch.Stats.SUM, label="throttled")],
                width=6, height=HEIGHT,
            )
        elif has_scaler:
            workers = cloudwatch.GraphWidget(
                title=f"{name}: workers wanted vs active",
                left=[self._metric(emf.WANTED, name, cloudwatch.Stats.MAXIMUM, "wanted"),
                      self._metric(emf.ACTIVE, name, cloudwatch.Stats.MAXIMUM, "active"),
                      self._metric(emf.SUBMITTED, name, cloudwatch.Stats.SUM, "submitted")],
                width=6, height=HEIGHT,
            )
        else:
            workers = cloudwatch.GraphWidget(
                title=f"{name}: tasks in flight (no scaler in alarms mode)",
                left=[queue.metric_approximate_number_of_messages_not_visible(
                    period=MINUTE, statistic=cloudwatch.Stats.MAXIMUM, label="in flight")],
                width=6, height=HEIGHT,
            )
        outcomes = cloudwatch.GraphWidget(
            title=f"{name}: tasks per minute",
            left=[self._metric(emf.TASKS, name, cloudwatch.Stats.SUM, outcome, **{emf.OUTCOME: outcome})
                  for outcome in emf.OUTCOMES],
            width=4, height=HEIGHT,
        )
        timings = cloudwatch.GraphWidget(
            title=f"{name}: wait and run time (s)",
            left=[self._metric(metric, name, stat, f"{label} {stat}")
                  for metric, label in ((emf.WAIT_SECONDS, "wait"), (emf.RUN_SECONDS, "run"))
                  for stat in ("p50", "p95")],
            width=4, height=HEIGHT,
        )
        dead_letters = cloudwatch.GraphWidget(
            title=f"{name}: dead-letter queue",
            left=[pool.dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=MINUTE, statistic=cloudwatch.Stats.MAXIMUM, label="messages")],
            width=4, height=HEIGHT,
        )
        return [backlog, workers, outcomes, timings, dead_letters]

    # -- the schedules ------------------------------------------------------------------------------

    def add_schedules_row(self, schedules: "Schedules") -> None:
        """A row for the schedules (schedules.py), below the others: did each fire, and when."""
        from batch_celery_container import schedule_sender as sender

        fields = ", ".join((sender.SCHEDULE, "task", "task_id", "queue", "scheduled_time", sender.LAG_SECONDS))
        last_fires = cloudwatch.LogQueryWidget(
            title="schedules: last fires (task messages sent)",
            log_group_names=[schedules.log_group.log_group_name],
            query_lines=[f"fields @timestamp, {fields}", f'filter sender = "{sender.RECORD_MARKER}"',
                         "sort @timestamp desc", "limit 20"],
            view=cloudwatch.LogQueryVisualizationType.TABLE,
            width=12, height=HEIGHT,
        )
        sent = cloudwatch.GraphWidget(
            title="schedules: tasks sent",
            left=[cloudwatch.Metric(namespace=self.namespace, metric_name=sender.SENT,
                                    dimensions_map={sender.SCHEDULE: name}, period=MINUTE,
                                    statistic=cloudwatch.Stats.SUM, label=name)
                  for name in schedules.schedules],
            width=6, height=HEIGHT,
        )
        failures = cloudwatch.GraphWidget(
            title="schedules: sender failed runs and throttles",
            left=[schedules.function.metric_errors(period=MINUTE, statistic=cloudwatch.Stats.SUM, label="failed runs"),
                  schedules.function.metric_throttles(period=MINUTE, statistic=cloudwatch.Stats.SUM, label="throttled")],
            width=6, height=HEIGHT,
        )
        self.dashboard.add_widgets(last_fires, sent, failures)
