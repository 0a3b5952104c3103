# The guide's sum-of-squares examples (function-definitions.md).
import time

from submodule.file_1 import square

from multinode import Multinode

mn = Multinode()


@mn.function()
def slowly_calculate_sum_of_squares(bound):
    sum = 0
    for i in range(bound):
        sum += square(i)
        time.sleep(1)
    return sum


@mn.function()
def slowly_calculate_product_of_squares(bound):
    product = 1
    for i in range(bound):
        product *= square(i)
        time.sleep(1)
    return product


@mn.function()
def sum_of_squares_with_progress(bound):
    progress = {"num_terms_incorporated": 0, "sum_so_far": 0}

    for i in range(bound):
        progress["num_terms_incorporated"] += 1
        progress["sum_so_far"] += i * i

        yield progress

        time.sleep(1)
