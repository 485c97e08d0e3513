#pragma once
#include <stddef.h>
#include <stdint.h>
#include "tensorflow/lite/schema/schema_generated.h"
// As in esp-tflite-micro 1.3.5 / 1.4.0: the schema version is defined here, not in the schema header.
#define TFLITE_SCHEMA_VERSION (3)
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef enum { kTfLiteNoType = 0, kTfLiteFloat32 = 1, kTfLiteInt32 = 2, kTfLiteUInt8 = 3, kTfLiteInt16 = 7,
               kTfLiteInt8 = 9 } TfLiteType;
typedef union {
  int32_t *i32;
  float *f;
  int8_t *int8;
  uint8_t *uint8;
} TfLitePtrUnion;
typedef struct {
  TfLiteType type;
  TfLitePtrUnion data;
  size_t bytes;
} TfLiteTensor;
namespace tflite {
class MicroResourceVariables;
class MicroProfilerInterface;
class MicroOpResolver {
 public:
  virtual ~MicroOpResolver() {}
};
class MicroInterpreter {
 public:
  MicroInterpreter(const Model *model, const MicroOpResolver &op_resolver, uint8_t *tensor_arena,
                   size_t tensor_arena_size, MicroResourceVariables *resource_variables = nullptr,
                   MicroProfilerInterface *profiler = nullptr, bool preserve_all_tensors = false);
  TfLiteStatus AllocateTensors();
  TfLiteStatus Invoke();
  TfLiteTensor *input(size_t index);
  TfLiteTensor *output(size_t index);
  size_t arena_used_bytes() const;
};
}  // namespace tflite
