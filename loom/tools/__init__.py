"""loom.tools"""
