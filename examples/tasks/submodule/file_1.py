# No @mn.function() decorator - does not define an asynchronous task.
def square(i):
    return i * i
