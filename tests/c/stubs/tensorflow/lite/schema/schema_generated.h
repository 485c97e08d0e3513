#pragma once
#include <stdint.h>
namespace tflite {
struct Model {
  uint32_t version() const;
};
const Model *GetModel(const void *buf);
}  // namespace tflite
