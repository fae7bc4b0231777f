"""loom.train"""
