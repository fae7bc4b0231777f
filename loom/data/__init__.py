"""loom.data"""
