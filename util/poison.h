/*
 * util/poison.h - force-included into every translation unit (Makefile):
 * functions with no length bound are poisoned so they cannot come back.
 * The system headers that declare them are included first.
 */
#ifndef COREMTA_POISON_H
#define COREMTA_POISON_H
#include <stdio.h>
#include <string.h>
#pragma GCC poison strcpy strcat sprintf vsprintf gets
#endif
