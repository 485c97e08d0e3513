#pragma once
#include "freertos/FreeRTOS.h"
#ifdef __cplusplus
extern "C" {
#endif
typedef void *TaskHandle_t;
typedef void (*TaskFunction_t)(void *);
void vTaskDelay(const TickType_t ticks);
BaseType_t xTaskCreatePinnedToCore(TaskFunction_t fn, const char *const name, const uint32_t stack_depth,
                                   void *const param, UBaseType_t priority, TaskHandle_t *const created,
                                   const BaseType_t core_id);
#ifdef __cplusplus
}
#endif
