"""The intake conversation: steps, validators, rendering-neutral messages, the engine.

Pure: no aiogram, no SQL. The Telegram adapter lives in ``bot/``.
"""
