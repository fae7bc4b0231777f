"""loom.infer"""
