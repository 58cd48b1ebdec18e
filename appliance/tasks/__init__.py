"""The task nursery: kernels run as tasks with priorities, timeouts, retries, persistence.

`Scheduler` owns the queue and the workers; `TaskRepository` keeps tasks, inputs and
results in the store; `inputs` turns request bodies into arrays and results back.
"""

from appliance.tasks.inputs import InputFormatError, parse_input
from appliance.tasks.model import FINISHED, TRANSITIONS, IllegalTransition, Task, TaskState
from appliance.tasks.queue import QueueFull, RunQueue
from appliance.tasks.repository import TaskRepository
from appliance.tasks.scheduler import Scheduler, SchedulerLimits

__all__ = [
    "FINISHED",
    "TRANSITIONS",
    "IllegalTransition",
    "InputFormatError",
    "QueueFull",
    "RunQueue",
    "Scheduler",
    "SchedulerLimits",
    "Task",
    "TaskRepository",
    "TaskState",
    "parse_input",
]
