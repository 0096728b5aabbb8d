"""Training partitions: one LoRA adapter per role."""

from dagster import StaticPartitionsDefinition

from agreemate_lib.training.splits import ROLES

role_partitions = StaticPartitionsDefinition(list(ROLES))
