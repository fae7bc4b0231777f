"""loom.model"""
