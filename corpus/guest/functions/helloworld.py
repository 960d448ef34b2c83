"""helloworld (FunctionBench / vHive): the smallest possible handler."""


def init():
    pass


def handle(arg):
    return "Hello, %s!" % arg
