"""Probing partitions: the base model and each role adapter."""

from dagster import StaticPartitionsDefinition

VARIANTS = ("base", "buyer", "seller", "generalist")
variant_partitions = StaticPartitionsDefinition(list(VARIANTS))
