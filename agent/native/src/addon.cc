// Module entry: each part of the native data path registers its exports here.
#include <node_api.h>

#include "shape.h"
#include "pgmsg.h"

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"shape", nullptr, shape_js, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"checkMessage", nullptr, pgmsg_check_js, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
