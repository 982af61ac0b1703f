from .fame import FAME, fame

__all__ = ['FAME', 'fame']
