"""loom.world: the synthetic shapes world, its dataset generator and its programmatic judge."""
