#pragma once
/* Declarations as in ESP-IDF 5.x FreeRTOS (portmacro.h for Xtensa, projdefs.h); checked against
 * IDF v5.1.6 / v5.4.2 sources. configTICK_RATE_HZ comes from CONFIG_FREERTOS_HZ in IDF. */
#include <stddef.h>
#include <stdint.h>
typedef int BaseType_t;
typedef unsigned int UBaseType_t;
typedef uint32_t TickType_t;
#define pdTRUE ((BaseType_t)1)
#define pdFALSE ((BaseType_t)0)
#define pdPASS pdTRUE
#define portMAX_DELAY ((TickType_t)0xffffffffUL)
#define configTICK_RATE_HZ 1000
#define pdMS_TO_TICKS(xTimeInMs) \
    ((TickType_t)(((TickType_t)(xTimeInMs) * (TickType_t)configTICK_RATE_HZ) / (TickType_t)1000U))
/* FreeRTOSConfig.h (ESP-IDF >= 5.2): cores the scheduler runs on (2 on the ESP32-S3). */
#define configNUMBER_OF_CORES 2
